"""Do the libraries compute the same thing? Compare each library's saved outputs with rlhook's."""

from __future__ import annotations

import torch

RTOL, ATOL = 1e-4, 1e-6  # relative to the largest magnitude of the reference tensor; the paper used atol 1e-6


def compare(saved: dict[str, str], reference: str = "rlhook") -> dict[str, dict]:
    """``{lib: {"ok": bool, "max_err": {key: relative error}}}`` over the keys each shares with ``reference``."""
    if reference not in saved:
        return {lib: {"ok": False, "error": f"{reference} produced no outputs"} for lib in saved}
    ref = torch.load(saved[reference])
    result = {}
    for lib, path in saved.items():
        got = torch.load(path)
        shared = [k for k in got if k in ref]
        errs = {}
        for k in shared:
            scale = ref[k].abs().max().item()
            err = (got[k] - ref[k]).abs().max().item() if got[k].shape == ref[k].shape else float("inf")
            errs[k] = err / max(scale, 1e-30)
            if err > ATOL + RTOL * scale:
                errs[k] = f"MISMATCH {errs[k]:.2e}"
        # a library sharing no key with rlhook (the bare forward) has nothing to disagree about
        result[lib] = {"ok": all(not isinstance(v, str) for v in errs.values()), "max_err": errs}
    return result
