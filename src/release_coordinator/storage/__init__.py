"""Where the two halves keep their state: the store interfaces (:mod:`.base` for the
Coordinator, :mod:`.rollout_base` for the RolloutManager) and their adapters (:mod:`.memory`,
:mod:`.memory_rollout`; :mod:`.sql` behind the ``[sql]``/``[postgres]`` extras)."""

__all__ = ["DEFAULT_DB"]

#: The database of ``release-coordinator db`` and ``serve``: a SQLite file in the working
#: directory.
DEFAULT_DB = "sqlite:///release-coordinator.db"
