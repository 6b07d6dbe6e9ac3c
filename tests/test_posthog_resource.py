"""Tests for PostHogResource: config validation names env vars, the key stays hidden."""

from pathlib import Path

import dagster as dg
import httpx
import pytest

from resources.budget import budget_bucket
from resources.errors import PostHogConfigError
from resources.posthog import PostHogResource

KEY = "phx_ResourceSecretKey42"


def resource(tmp_path: Path, **overrides: object) -> PostHogResource:
    config: dict[str, object] = {
        "host": "https://us.posthog.com",
        "project_id": "1",
        "personal_api_key": KEY,
        "state_dir": str(tmp_path / "lake"),
    }
    config.update(overrides)
    return PostHogResource(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "env_var"),
    [
        ({"project_id": ""}, "POSTHOG_PROJECT_ID is not set"),
        ({"personal_api_key": ""}, "POSTHOG_PERSONAL_API_KEY is not set"),
        ({"project_id": "abc"}, "POSTHOG_PROJECT_ID"),
        ({"personal_api_key": "phx_with space"}, "POSTHOG_PERSONAL_API_KEY"),
        ({"host": "us.posthog.com"}, "POSTHOG_HOST"),
        ({"host": "https://us.posthog.com/api"}, "POSTHOG_HOST"),
        ({"requests_per_minute": "lots"}, "POSTHOG_REQUESTS_PER_MINUTE"),
        ({"requests_per_minute": "-1"}, "POSTHOG_REQUESTS_PER_MINUTE"),
        ({"requests_per_minute": "4.5"}, "POSTHOG_REQUESTS_PER_MINUTE"),
        ({"requests_per_hour": ""}, "POSTHOG_REQUESTS_PER_HOUR"),
        ({"requests_per_hour": "1e3"}, "POSTHOG_REQUESTS_PER_HOUR"),
    ],
)
def test_resource_config_errors_name_the_env_var(
    tmp_path: Path, overrides: dict[str, object], env_var: str
) -> None:
    with pytest.raises(PostHogConfigError, match=env_var) as info:
        resource(tmp_path, **overrides).get_client()
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [{"request_timeout": 0.0}, {"request_max_retries": -1}, {"request_retry_delay": -1.0}],
)
def test_resource_rejects_bad_request_settings(
    tmp_path: Path, overrides: dict[str, object]
) -> None:
    with pytest.raises(PostHogConfigError):
        resource(tmp_path, **overrides).get_client()


def test_resource_builds_client_with_shared_budget(tmp_path: Path) -> None:
    res = resource(tmp_path, requests_per_minute=" 120 ", request_timeout=5.0)
    with res.get_client() as client:
        budget = client._t.budget
        assert budget is not None
        assert budget.path == tmp_path / "lake" / "_state" / "budget.sqlite"
        assert budget.limits == ((120, 60.0), (4800, 3600.0))
        assert budget.bucket == budget_bucket("https://us.posthog.com", KEY)
        assert client._t.timeout == httpx.Timeout(5.0, connect=5.0)
        assert client._t.max_retries == 8


def test_resource_zero_rates_are_unlimited(tmp_path: Path) -> None:
    res = resource(tmp_path, requests_per_minute="0", requests_per_hour="0")
    with res.get_client() as client:
        assert client._t.budget is not None and client._t.budget.unlimited


def test_resource_normalizes_host_for_the_budget_bucket(tmp_path: Path) -> None:
    a = resource(tmp_path, host="https://us.posthog.com/").get_client()
    b = resource(tmp_path, host="HTTPS://US.POSTHOG.COM:443").get_client()
    try:
        assert a._t.budget.bucket == b._t.budget.bucket  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def test_resource_repr_hides_the_key(tmp_path: Path) -> None:
    res = resource(tmp_path)
    assert KEY not in repr(res)
    assert KEY not in str(res)
    assert KEY not in repr(res.get_client())


def test_resource_fields_have_descriptions() -> None:
    fields = PostHogResource.model_fields
    assert set(fields) == {
        "host",
        "project_id",
        "personal_api_key",
        "requests_per_minute",
        "requests_per_hour",
        "rate_limit_windows",
        "query_requests_per_hour",
        "groups_source",
        "budget_url",
        "state_dir",
        "request_timeout",
        "request_max_retries",
        "request_retry_delay",
        "request_max_retry_delay",
    }
    assert all(field.description for field in fields.values())


def test_resource_with_env_var_in_a_run_keeps_key_out_of_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTHOG_PERSONAL_API_KEY", KEY)
    monkeypatch.setenv("POSTHOG_PROJECT_ID", "1")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if len(seen) == 1:  # exercise the retry and deprecation log lines through context.log
            return httpx.Response(503, headers={"Retry-After": "0.01"})
        body = [{"group_type": "organization", "group_type_index": 0}]
        return httpx.Response(200, json=body, headers={"Deprecation": "true"})

    @dg.asset
    def group_types(
        context: dg.AssetExecutionContext, posthog: PostHogResource
    ) -> dg.MaterializeResult:
        with posthog.get_client(
            logger=context.log, transport=httpx.MockTransport(handler)
        ) as client:
            types = client.list_group_types()
            context.log.info(f"resource: {posthog!r}; client: {client!r}")
            return dg.MaterializeResult(
                metadata={"types": len(types), **client.stats.as_metadata()}
            )

    posthog = PostHogResource(
        project_id=dg.EnvVar("POSTHOG_PROJECT_ID"),
        personal_api_key=dg.EnvVar("POSTHOG_PERSONAL_API_KEY"),
        state_dir=str(tmp_path / "lake"),
    )
    result = dg.materialize([group_types], resources={"posthog": posthog})
    assert result.success
    assert seen == [f"Bearer {KEY}"] * 2
    messages = [str(event) for event in result.all_events]
    assert not any(KEY in m for m in messages)
    logged = capfd.readouterr().err  # Dagster's console logger
    assert "deprecated" in logged and "retry 1/8" in logged
    assert KEY not in logged


def test_resource_rate_limit_windows_override_and_bad_value_names_env_var() -> None:
    resource = PostHogResource(host="http://127.0.0.1:9", project_id="1",
                               personal_api_key="phx_windows_test", rate_limit_windows="60/10, 240/60")
    with resource.get_client() as client:
        assert client._t.budget.limits == ((60, 10.0), (240, 60.0))
    bad = PostHogResource(host="http://127.0.0.1:9", project_id="1",
                          personal_api_key="phx_windows_test", rate_limit_windows="60 per 10")
    with pytest.raises(PostHogConfigError, match="POSTHOG_RATE_LIMIT_WINDOWS"):
        bad.get_client()


def test_resource_config_problems_names_every_bad_variable_at_once() -> None:
    resource = PostHogResource(host="ftp://x", project_id="", personal_api_key="",
                               requests_per_minute="lots")
    problems = resource.config_problems()
    assert [p.split("=")[0].split(" ")[0] for p in problems] == [
        "POSTHOG_HOST", "POSTHOG_PROJECT_ID", "POSTHOG_PERSONAL_API_KEY",
        "POSTHOG_REQUESTS_PER_MINUTE"]
    with pytest.raises(PostHogConfigError) as raised:
        resource.get_client()
    assert raised.value.description.startswith("4 configuration problems:")
    assert "POSTHOG_PERSONAL_API_KEY" in raised.value.description
