"""Visual semantic search and image-text matching: an image index in a vector database, two-stage retrieval
(embedding cosine, then the ITM fusion re-ranks the top k)."""
