"""Finding photos: composite query terms (:mod:`.query`), text and image search over the vector
index and the full text (:mod:`.searcher`), near-duplicates (:mod:`.duplicates`) and retrieval
evaluation (:mod:`.evaluation`)."""
