"""Prefect orchestration of the GroupDiff pipeline (DESIGN 2.2): thin tasks over ``groupdiff`` stages.

Modules: :mod:`flows.params` (typed parameters = UI forms, the ``pipeline`` settings of ``groupdiff run``),
:mod:`flows.records` (object store, MLflow, catalogue from the environment), :mod:`flows.digests`
(content digests = cache keys), :mod:`flows.data_tasks` (classifier, embed, mine), :mod:`flows.training`
(training subprocess in its own process group), :mod:`flows.eval_tasks` (sample, score, register),
:mod:`flows.pipeline` (the flow), :mod:`flows.maintenance` (retrain-nightly, evaluate-model),
:mod:`flows.study` (grids of child runs), :mod:`flows.deployments` (serve / deploy).
"""
