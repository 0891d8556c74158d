"""One module per stage: the stage's logic, and nothing shared."""
