"""Classifiers over stored embeddings: zero-shot tagging, evaluation on labelled sets, linear probes."""
