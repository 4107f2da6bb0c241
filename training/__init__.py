"""Train the bundled English model: Brown Corpus -> SentencePiece BPE -> small Griffin."""
