"""Golden-model regression: every unit's bit-exact cocotb checks, for any config.

``registry`` holds the table of cases (:data:`~vitaccel.sim.regress.registry.CASES`);
``plan`` expands it into independent tasks (config x case x seed x simulator); ``execute``
runs them in this process, in a local process pool or on a Dask cluster; ``report`` writes
the summary table, JSON and JUnit XML; ``session`` ties them together. The command line is
``vitaccel regress`` (:mod:`vitaccel.sw.commands.regress`).

Fuzzing (``vitaccel regress --fuzz N``): ``fuzz_gen`` generates programs, ``fuzz_check``
judges golden and RTL runs, ``fuzz_rtl`` runs a batch in one simulator launch, ``shrink``
minimises a failure, ``fuzz`` (:func:`run_fuzz`) runs batches locally or on Dask.
"""

from vitaccel.sim.regress.execute import ClusterError, execute_task
from vitaccel.sim.regress.fuzz import run_fuzz
from vitaccel.sim.regress.plan import Plan, Task, make_plan
from vitaccel.sim.regress.registry import CASES, CaseSpec, case_names
from vitaccel.sim.regress.report import print_summary, summary_document, write_junit
from vitaccel.sim.regress.session import run_regression

__all__ = ["CASES", "CaseSpec", "case_names", "Plan", "Task", "make_plan", "execute_task",
           "ClusterError", "run_regression", "run_fuzz", "summary_document", "print_summary", "write_junit"]
