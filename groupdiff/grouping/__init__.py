"""Group mining: embeddings, similarity index, group tables and epoch plans."""
