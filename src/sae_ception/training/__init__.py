"""Training loops: the classifier (baseline and auxiliary retraining) and the auxiliary objective."""
