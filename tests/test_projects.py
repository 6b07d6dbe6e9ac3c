"""Projects configured without code (resources/projects.py), and one budget per key."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.budget import budget_bucket
from resources.errors import PostHogConfigError
from resources.posthog import PostHogResource
from resources.projects import ProjectConfig, projects_from_env


def test_projects_default_is_todays_one_project() -> None:
    assert projects_from_env({"POSTHOG_PROJECT_ID": "123"}) == [
        ProjectConfig("https://us.posthog.com", "123", "POSTHOG_PERSONAL_API_KEY")]
    assert projects_from_env({"POSTHOG_PROJECT_ID": "@current"})[0].project_id == "@current"
    # unset: one project with no id, which the resource reports as POSTHOG_PROJECT_ID not set
    assert projects_from_env({}) == [ProjectConfig("https://us.posthog.com", "")]


def test_projects_list_of_ids_for_one_host_and_key() -> None:
    env = {"POSTHOG_HOST": "https://eu.posthog.com", "POSTHOG_PROJECT_ID": "123, 456"}
    assert projects_from_env(env) == [ProjectConfig("https://eu.posthog.com", "123"),
                                      ProjectConfig("https://eu.posthog.com", "456")]
    for bad in ("123,abc", "123,,456", "123,@current", "123,123"):
        with pytest.raises(PostHogConfigError):
            projects_from_env({"POSTHOG_PROJECT_ID": bad})


def test_projects_file_names_the_key_variable_never_the_key(tmp_path: Path) -> None:
    file = tmp_path / "projects.yaml"
    file.write_text("projects:\n"
                    "  - id: 123\n"
                    "  - id: 456\n    host: https://eu.posthog.com\n    key_env: POSTHOG_KEY_EU\n")
    env = {"POSTHOG_PROJECTS_FILE": str(file)}
    assert projects_from_env(env) == [
        ProjectConfig("https://us.posthog.com", "123", "POSTHOG_PERSONAL_API_KEY"),
        ProjectConfig("https://eu.posthog.com", "456", "POSTHOG_KEY_EU")]
    for text, message in [
        # tables tell projects apart by project_id: two hosts' projects 123 cannot share them
        ("projects:\n  - id: 123\n  - id: 123\n    host: https://eu.posthog.com\n",
         "share the id 123.*its own deployment"),
        ("projects: []\n", "non-empty list"),
        ("projects:\n  - id: x\n", "numeric id"),
        ("projects:\n  - id: 1\n    key_env: phx_abc def\n", "name an environment variable"),
        ("projects:\n  - id: 1\n    api_key: phx_x\n", "never the key"),
        ("projects: [\n", "not valid YAML"),
    ]:
        file.write_text(text)
        with pytest.raises(PostHogConfigError, match=message) as info:
            projects_from_env(env)
        assert "phx_x" not in str(info.value)
    with pytest.raises(PostHogConfigError, match="not both"):
        projects_from_env({**env, "POSTHOG_PROJECT_ID": "1"})
    with pytest.raises(PostHogConfigError, match="cannot be read"):
        projects_from_env({"POSTHOG_PROJECTS_FILE": str(tmp_path / "missing.yaml")})


def test_projects_sharing_a_key_share_one_budget_other_keys_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY_A", "phx_key_a")
    monkeypatch.setenv("KEY_B", "phx_key_b")
    resource = PostHogResource(state_dir=str(tmp_path))
    host = "https://us.posthog.com"
    buckets = {}
    for name, project in {"a1": ProjectConfig(host, "1", "KEY_A"),
                          "a2": ProjectConfig(host, "2", "KEY_A"),
                          "b3": ProjectConfig(host, "3", "KEY_B")}.items():
        with resource.get_client(project=project) as client:
            assert client.project_id == project.project_id
            buckets[name] = client._t.budget.bucket  # type: ignore[union-attr]
    assert buckets["a1"] == buckets["a2"] == budget_bucket(host, "phx_key_a")
    assert buckets["b3"] == budget_bucket(host, "phx_key_b") != buckets["a1"]
    monkeypatch.delenv("KEY_B")
    with pytest.raises(PostHogConfigError, match="KEY_B"):
        resource.get_client(project=ProjectConfig(host, "3", "KEY_B"))
