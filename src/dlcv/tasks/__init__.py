"""Tasks: classify, ssl, segment; each a thin layer over the engine."""
