"""What an action of the actions table is (``workflow.ActionType``), and the root action's name.

Kept apart from ``engine.model`` (pydantic, the CRD) so that thin clients import them without it.
"""

ROOT_ACTION_NAME = "a0"

ACTION_TYPE_TASK = 1
ACTION_TYPE_TRACE = 2
ACTION_TYPE_CONDITION = 3
