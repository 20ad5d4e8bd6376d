"""Figures: training curves, confusion matrices, PCA / t-SNE embeddings."""
