"""`python -m collapse_passes`: the signals are taken over before anything heavy is imported (the package
imports lazily), and the process leaves through outputs.leave_program (see there)."""
from .outputs import take_program_signals

take_program_signals()

from .cli import console_main  # noqa: E402

console_main()
