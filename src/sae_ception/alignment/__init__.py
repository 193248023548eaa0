"""Cross-model feature alignment (scripts/align_features.py): map one model's activations and SAE features onto
another's, with crosscoders and the universality measures, beside controls (README "Cross-model feature alignment")."""
