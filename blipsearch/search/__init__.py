"""Finding photos: composite query terms (:mod:`.query`), a query image's vector (:mod:`.images`),
text and image search over the vector index and the full text (:mod:`.searcher`), and
near-duplicates (:mod:`.duplicates`)."""
