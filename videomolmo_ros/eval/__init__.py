"""Evaluation: dataset readers, scoring of the streaming engine's output, the evaluate command."""
