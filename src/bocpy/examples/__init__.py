"""Runnable examples of bocpy, each a module: ``python -m bocpy.examples.NAME``.

* ``bank`` -- random concurrent transfers between accounts; each transfer is one
  behavior on two cowns, and the total balance is conserved.
* ``dining_philosophers`` -- philosophers eat with the two forks beside them;
  a behavior that owns both forks never deadlocks.
* ``fibonacci`` -- fork/join recursion: behaviors that schedule behaviors and
  combine their result cowns.
* ``parallel_demo`` -- CPU-bound pure-Python work on one worker and then on
  several, showing the speedup from sub-interpreters with their own GIL.

Every example takes ``--help``, checks its own result and exits with status 1
if the check fails.  Each one's ``main(argv)`` can also be called directly.
"""

EXAMPLES: tuple[str, ...] = ("bank", "dining_philosophers", "fibonacci", "parallel_demo")

__all__ = ["EXAMPLES"]
