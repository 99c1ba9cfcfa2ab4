"""Host-side verifier pool: sandboxed Python and Bend/HVM backends (no JAX here, by design).

    from jaxdiff.verify import VerifierPool
    with VerifierPool(workers=2, timeout_s=5) as pool:
        results = pool.run([{"id": 1, "program": "def f(x): return x + 1", "tests": "assert f(1) == 2"}])

Rewards on top of results: `jaxdiff.verify.reward`. Command line: `python -m jaxdiff.verify`.
Isolation model and formats: docs/verify.md.
"""

from jaxdiff.verify.jobs import STATUSES, JobError, Limits
from jaxdiff.verify.pool import Ticket, VerifierPool
from jaxdiff.verify.sandbox import Isolation, SandboxUnavailable, probe

__all__ = ["VerifierPool", "Ticket", "Limits", "JobError", "STATUSES", "SandboxUnavailable", "Isolation", "probe"]
