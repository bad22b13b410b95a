"""The vector index: FAISS over the library's ITC vectors, exact or approximate and tuned for a
recall target (:mod:`.index`), mirrored from the database and kept caught up with it
(:mod:`.mirror`). It holds vectors and ids only; the database is the truth."""
