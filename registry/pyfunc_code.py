"""The code MLflow runs to load a GroupDiff model: models-from-code, so no pickled Python object is stored.

:func:`registry.mlflow_model.log_groupdiff_model` logs this file as the model's ``python_model``; MLflow
copies it into the model folder and runs it on load. It hands MLflow a fresh
:class:`~registry.mlflow_model.GroupDiffPyfunc`, whose ``load_context`` reads the weights (safetensors) and
the config (JSON) from the model's artefacts.
"""
import mlflow

from registry.mlflow_model import GroupDiffPyfunc

mlflow.models.set_model(GroupDiffPyfunc())
