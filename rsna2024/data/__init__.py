"""The competition's CSV contract: reading and validating data folders, folds, the image-free prior."""
