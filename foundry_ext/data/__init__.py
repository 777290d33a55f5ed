"""Data: embedded corpus, tokenizer training, text -> MDS, the corpus dataloader."""
