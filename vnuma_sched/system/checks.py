"""The doctor's row: a named check, its status and a one-line reason naming the evidence.

Statuses: ok; warn (works with a caveat, or "unknown" when the evidence is not
there); missing (a feature this kernel or host does not give); n/a (does not
apply here); fail (what the check asks is seen not to hold); unsupported (this
system cannot answer the question at all).
"""

from dataclasses import dataclass, field

from vnuma_sched.errors import VnumaError

OK, WARN, MISSING, NA = "ok", "warn", "missing", "n/a"
FAIL, UNSUPPORTED = "fail", "unsupported"
STATUSES = (OK, WARN, MISSING, NA, FAIL, UNSUPPORTED)


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict = field(default_factory=dict)

    def to_dict(self):
        return {"name": self.name, "status": self.status, "detail": self.detail}


def guarded(name, fn, *args):
    """fn(*args) as a list of Checks; one warn row naming the error when it cannot run."""
    try:
        result = fn(*args)
    except (VnumaError, OSError, ValueError) as err:
        return [Check(name, WARN, f"check could not run: {err}")]
    return result if isinstance(result, list) else [result]


def by_name(checks):
    return {c.name: c for c in checks}
