"""One exception type for every user-facing failure: its message is the one line the CLI prints.

Exit codes of the CLI: 0 done, 1 verification failed, 2 bad input (CollapseError: anything the
user can fix; one line, nothing written), 3 a bug (traceback and a request to report it).
"""

EXIT_OK = 0
EXIT_VERIFICATION = 1
EXIT_BAD_INPUT = 2
EXIT_BUG = 3
BUG_REPORT = ("this is a bug in collapse_passes, not a problem with your input; please report it with the "
              "command line and the traceback above")


class CollapseError(Exception):
    """A problem with the user's input or request; the message names it and a way out."""

    exit_code = EXIT_BAD_INPUT


def random_model_error(found: list[str], way_out: str, state: str = "") -> CollapseError:
    """The refusal of a model that draws random numbers (`found`: "name (op)" rows), one wording for every front
    end; `state` says why it does ("it is in training mode"), `way_out` what to do."""
    shown = ", ".join(found[:2]) + (" ..." if len(found) > 2 else "")
    return CollapseError(f"the model draws random numbers ({shown}){', ' + state if state else ''}: its output is not a "
                         f"function of its input, so no result can be verified; {way_out}")


class VerificationError(CollapseError):
    """The transformed model does not match the requested semantics within tolerance."""

    exit_code = EXIT_VERIFICATION

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report

    @classmethod
    def mismatch(cls, comparison, rtol, atol, remedy: str, report=None) -> "VerificationError":
        """The gate's failure, with the numbers (a comparison with max_abs / max_rel), for any front end."""
        if getattr(comparison, "why", ""):
            return cls(f"verification failed: {comparison.why}; {remedy}", report=report)
        return cls(f"verification failed: output differs from the requested semantics (max abs "
                   f"{comparison.max_abs:.3g}, max rel {comparison.max_rel:.3g}, rtol {rtol}, atol {atol}); {remedy}",
                   report=report)
