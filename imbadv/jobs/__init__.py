"""The two jobs a user runs one model at a time: train (and register) and evaluate (attack)."""
