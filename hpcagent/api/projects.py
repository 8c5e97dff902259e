"""``projects.*`` helpers (clearml-api.md §6.2)."""

from __future__ import annotations

import re
from typing import Any

from hpcagent.api.base import Service, drop_none
from hpcagent.errors import ApiError


class ProjectsService(Service):
    service = "projects"

    def get_all(self, **filters: Any) -> list[dict[str, Any]]:
        projects = self.call("get_all", drop_none(filters)).get("projects") or []
        return [p for p in projects if isinstance(p, dict)]

    def get_by_id(self, project_id: str) -> dict[str, Any]:
        project = self.call("get_by_id", {"project": project_id}).get("project")
        if not isinstance(project, dict):
            raise ApiError("projects.get_by_id", 400, 401, f"invalid project id: {project_id}")
        return project

    def create(self, name: str, description: str = "") -> str:
        return str(self.call("create", {"name": name, "description": description})["id"])

    def by_name(self, name: str) -> dict[str, Any] | None:
        """The project named exactly ``name``, or None."""
        found = self.get_all(
            name=f"^{re.escape(name)}$", only_fields=["id", "name"], search_hidden=True
        )
        for project in found:
            if project.get("name") == name:
                return project
        return None

    def get_or_create(self, name: str) -> str:
        """The id of project ``name``, creating the project when it does not exist yet."""
        project = self.by_name(name)
        if project is not None:
            return str(project["id"])
        return self.create(name)
