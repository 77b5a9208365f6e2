"""grok_tune: hyperparameter studies of grokking."""
