"""Group mining: embeddings, similarity index, group tables and epoch plans (DESIGN 1.3, 1.5).

Pipeline: ``groupdiff embed --out EMB`` (shards of L2-normalised embeddings, restartable, one process
per rank) -> ``groupdiff mine --embeddings EMB --out groups.npz`` (faiss top-k, tau, fill rule,
statistics and recall) -> training builds each epoch's batches with
``build_epoch_plan(..., **GroupTable.load("groups.npz").plan_kwargs())``.
"""
