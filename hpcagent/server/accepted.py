"""The request fields each endpoint honours: any other field is a 400 naming it and the endpoint.

clearml-server checks every request against its schema, so a field it does not know never
passes unnoticed. This table is the one place that says which top-level body fields each
endpoint of the embedded server reads (the handler in ``routes/`` gives them their meaning);
:func:`strict` wraps every handler so that the REST dispatcher and the web UI (which calls the
same handlers in-process) refuse anything else with ``400/12`` before the handler runs.

The lists were taken from the handlers and checked against what the official SDK (clearml
2.1.12, ``backend_api/services/v2_23``) and clearml-agent 3.0.3 send
(tests/unit/test_server_accepted.py compares them with the SDK's request schemas; the SDK
flows of tests/e2e run against this table). The ``*.get_all`` endpoints check their own
filters (:class:`~hpcagent.server.fields.ListFilter`), marked :data:`SELF_CHECKED`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpcagent.server.fields import VALIDATION, ApiFault, reject_unknown

if TYPE_CHECKING:
    from hpcagent.server.app import Ctx

#: The handler refuses unknown fields itself (the ``get_all`` filters and paging keys).
SELF_CHECKED: tuple[str, ...] = ("*",)

_STATUS = ("task", "force", "status_reason", "status_message")
_MOVE = ("queue", "task")
_METRICS_READ = ("tasks", "metrics", "model_events")
_MODEL_EDIT = (
    *("model", "name", "uri", "comment", "framework", "project", "parent", "task", "ready"),
    *("public", "design", "labels", "tags", "system_tags", "metadata", "iteration"),
)
_TASK_FIELDS = (
    *("name", "type", "comment", "parent", "project", "tags", "system_tags", "output_dest"),
    *("script", "execution", "output", "models", "hyperparams", "configuration", "runtime"),
    "container",
)

ACCEPTED: dict[str, tuple[str, ...]] = {
    "auth.login": ("expiration_sec",),
    "debug.ping": (),
    # events: add_batch reads its raw body (json-lines, a list or {"requests": [...]}); the
    # query string is its only merged object, and it reads nothing there
    "events.add_batch": (),
    "events.get_task_log": ("task", "batch_size", "navigate_earlier", "from_timestamp", "order"),
    "events.get_task_events": (
        *("task", "event_type", "batch_size", "order", "scroll_id", "metrics", "model_events"),
    ),
    "events.scalar_metrics_iter_histogram": ("task", "samples", "key", "metrics", "model_events"),
    "events.multi_task_scalar_metrics_iter_histogram": (*_METRICS_READ, "samples", "key"),
    "events.get_task_single_value_metrics": _METRICS_READ,
    "events.get_scalar_metrics_and_variants": ("task", "model_events"),
    "events.get_vector_metrics_and_variants": ("task", "model_events"),
    "events.get_task_metrics": ("tasks", "event_type", "model_events"),
    "events.get_multi_task_metrics": ("tasks", "event_type", "model_events"),
    # plots are answered whole, never with a scroll: no_scroll holds either way
    "events.get_task_plots": ("task", "iters", "metrics", "model_events", "no_scroll"),
    "events.get_multi_task_plots": (*_METRICS_READ, "iters", "no_scroll"),
    "events.debug_images": (
        *("metrics", "iters", "navigate_earlier", "refresh", "scroll_id", "model_events"),
    ),
    "events.get_debug_image_sample": (
        *("task", "metric", "variant", "iteration", "navigate_current_metric", "model_events"),
    ),
    "events.next_debug_image_sample": (
        *("task", "scroll_id", "navigate_earlier", "next_iteration", "model_events"),
    ),
    # models
    "models.create": tuple(f for f in _MODEL_EDIT if f not in ("model", "iteration")),
    "models.get_by_id": ("model",),
    "models.get_all": SELF_CHECKED,
    "models.get_all_ex": SELF_CHECKED,
    "models.edit": _MODEL_EDIT,
    "models.update": _MODEL_EDIT,
    "models.set_ready": ("model", "publish_task"),
    "models.delete": ("model", "force", "delete_external_artifacts"),
    "models.add_or_update_metadata": ("model", "metadata", "replace_metadata"),
    "models.delete_metadata": ("model", "keys"),
    "models.archive_many": ("ids",),
    "models.unarchive_many": ("ids",),
    "models.update_for_task": (
        *("task", "uri", "name", "comment", "tags", "system_tags", "override_model_id"),
        "iteration",
    ),
    # projects
    "projects.get_all": SELF_CHECKED,
    "projects.get_all_ex": SELF_CHECKED,
    "projects.create": ("name", "description", "tags", "system_tags", "default_output_destination"),
    "projects.get_by_id": ("project",),
    "projects.update": SELF_CHECKED,
    # queues
    "queues.get_all": SELF_CHECKED,
    "queues.get_all_ex": SELF_CHECKED,
    "queues.get_by_id": ("queue",),
    "queues.get_default": (),
    "queues.create": ("name", "display_name", "tags", "system_tags"),
    "queues.delete": ("queue", "force"),
    "queues.update": ("queue", "name", "tags", "system_tags"),
    # pop_id: hpcagent's repeatable pop (declared in the token's hpcagent_features)
    "queues.get_next_task": ("queue", "get_task_info", "pop_id"),
    "queues.add_task": _MOVE,
    "queues.remove_task": (*_MOVE, "update_task_status"),
    "queues.get_num_entries": ("queue",),
    "queues.move_task_to_front": _MOVE,
    "queues.move_task_to_back": _MOVE,
    "queues.move_task_forward": (*_MOVE, "count"),
    "queues.move_task_backward": (*_MOVE, "count"),
    # tasks
    "tasks.create": SELF_CHECKED,
    "tasks.edit": SELF_CHECKED,
    "tasks.get_by_id": ("task", "only_fields"),
    "tasks.get_all": SELF_CHECKED,
    "tasks.get_all_ex": SELF_CHECKED,
    "tasks.update": (
        *("task", "name", "comment", "tags", "system_tags", "project"),
        *("status_message", "status_reason"),
        "if_status",  # hpcagent's conditional update (declared in the token's hpcagent_features)
    ),
    "tasks.set_requirements": ("task", "requirements", "force"),
    "tasks.clone": (
        *("task", "new_task_name", "new_task_parent", "execution_overrides", "new_task_comment"),
        *("new_task_tags", "new_task_system_tags", "new_task_project", "new_task_hyperparams"),
        *("new_task_configuration", "new_task_container", "new_task_input_models"),
    ),
    "tasks.edit_hyper_params": ("task", "hyperparams", "replace_hyperparams", "force"),
    "tasks.get_hyper_params": ("tasks",),
    "tasks.delete_hyper_params": ("task", "hyperparams", "force"),
    "tasks.add_or_update_artifacts": ("task", "artifacts", "force"),
    "tasks.delete_artifacts": ("task", "artifacts", "force"),
    "tasks.add_or_update_model": ("task", "name", "model", "type", "iteration"),
    "tasks.delete_models": ("task", "models"),
    "tasks.delete": (
        *("task", "force", "delete_output_models", "delete_external_artifacts"),
        *("return_file_urls", "move_to_trash"),
    ),
    "tasks.started": _STATUS,
    "tasks.stopped": _STATUS,
    "tasks.failed": _STATUS,
    "tasks.completed": (*_STATUS, "publish"),
    "tasks.close": _STATUS,
    "tasks.publish": _STATUS,
    "tasks.stop": _STATUS,
    "tasks.ping": ("task",),
    "tasks.enqueue": (
        *_STATUS,
        "queue",
        "queue_name",
        "update_execution_queue",
        "verify_watched_queue",
    ),
    "tasks.dequeue": (*_STATUS, "new_status"),
    "tasks.reset": (*_STATUS, "clear_all"),
    # workers (clearml-agent's status report also carries timestamp, queue and is_daemon)
    "workers.register": ("worker", "timeout", "queues", "tags", "system_tags", "is_daemon"),
    # clearml-agent sends the queues it served; the worker leaves them all (it is removed)
    "workers.unregister": ("worker", "queues"),
    "workers.status_report": (
        *("worker", "task", "queue", "queues", "tags", "system_tags", "machine_stats"),
        *("timestamp", "is_daemon"),
    ),
    "workers.get_all": SELF_CHECKED,
    "workers.get_stats": (
        *("from_date", "to_date", "interval", "items", "split_by_variant", "worker_ids"),
    ),
    "workers.get_activity_report": ("from_date", "to_date", "interval"),
    "workers.get_metric_keys": ("worker_ids",),
    "workers.get_runtime_properties": ("worker",),
    "workers.set_runtime_properties": ("worker", "runtime_properties"),
}

#: Fields accepted only at their default (clearml-server's other values mean something this
#: server does not keep): ``model_events: true`` asks for the events of models,
#: ``move_to_trash: true`` (the SDK sends false) for a trash project.
DEFAULT_ONLY: dict[str, Any] = {"model_events": False, "move_to_trash": False}

Handler = Callable[["Ctx", dict[str, Any]], dict[str, Any]]


def strict(endpoint: str, handler: Handler) -> Handler:
    """``handler`` behind the check of :data:`ACCEPTED` (an endpoint missing from the table
    accepts no field at all: adding an endpoint means saying what it reads); every 4xx it
    answers names the endpoint in the envelope's ``meta.endpoint``."""
    known = ACCEPTED.get(endpoint, ())

    def checked(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
        if known != SELF_CHECKED:
            reject_unknown(body, known, endpoint)
        for field, default in DEFAULT_ONLY.items():
            if body.get(field, default) not in (None, default):
                raise ApiFault(
                    VALIDATION,
                    f"Validation error: field '{field}' of {endpoint} is supported only as "
                    f"{str(default).lower()} here, got {str(body[field])[:40]!r}",
                    {"field": field, "endpoint": endpoint},
                )
        return handler(ctx, body)

    checked.__name__ = getattr(handler, "__name__", endpoint)
    checked.__doc__ = handler.__doc__
    return checked
