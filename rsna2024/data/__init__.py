"""The competition's CSV contract: reading and validating data folders, and the cross-validation folds."""
