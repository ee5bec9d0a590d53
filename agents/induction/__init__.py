"""A 2-layer attention-only transformer trained on repeated random token sequences (it learns induction heads)."""
