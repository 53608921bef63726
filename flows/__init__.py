"""Prefect orchestration of the GroupDiff pipeline (DESIGN 2.2): thin tasks over ``groupdiff`` stages.

Modules: :mod:`flows.params` (typed parameters = UI forms, the ``pipeline`` settings of ``groupdiff run``),
:mod:`flows.records` (object store, MLflow, catalogue from the environment), :mod:`flows.digests`
(content digests = cache keys), :mod:`flows.data_tasks` (classifier, embed, mine), :mod:`flows.training`
(training subprocess in its own process group), :mod:`flows.eval_tasks` (sample, score, register),
:mod:`flows.pipeline` (the flow), :mod:`flows.maintenance` (retrain-nightly, evaluate-model),
:mod:`flows.study` (grids of child runs), :mod:`flows.ingest` (dataset versions), :mod:`flows.deployments`
(serve / deploy).

Importing the package names the object store factory for ``s3://`` dataset roots
(``$GROUPDIFF_STORE_FACTORY``, :mod:`groupdiff.data.remote`) unless the environment names one: the flows'
own reads and the training subprocesses they launch (which inherit the environment) open them through it.
"""
import os as _os

from groupdiff.data.remote import STORE_FACTORY_ENV as _FACTORY_ENV

_os.environ.setdefault(_FACTORY_ENV, "registry.stores:open_store")
