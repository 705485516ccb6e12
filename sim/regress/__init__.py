"""Golden-model regression: every unit's bit-exact cocotb checks, for any config.

``registry`` holds the table of cases (:data:`~vitaccel.sim.regress.registry.CASES`);
``plan`` expands it into independent tasks (config x case x seed x simulator); ``execute``
runs them in this process, in a local process pool or on a Dask cluster; ``report`` writes
the summary table, JSON and JUnit XML; ``session`` ties them together. The command line is
``vitaccel regress`` (:mod:`vitaccel.sw.commands.regress`).
"""

from vitaccel.sim.regress.execute import ClusterError, execute_task
from vitaccel.sim.regress.plan import Plan, Task, make_plan
from vitaccel.sim.regress.registry import CASES, CaseSpec, case_names
from vitaccel.sim.regress.report import print_summary, summary_document, write_junit
from vitaccel.sim.regress.session import run_regression

__all__ = ["CASES", "CaseSpec", "case_names", "Plan", "Task", "make_plan", "execute_task",
           "ClusterError", "run_regression", "summary_document", "print_summary", "write_junit"]
