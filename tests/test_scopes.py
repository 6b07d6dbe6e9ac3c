"""Every asset with a key holding exactly the documented scopes it needs (README, docs/SCOPES.md):
it lands; without its own scope, the run fails with a 403 that names the scope and the asset."""

from __future__ import annotations

import pytest

from tests.helpers import failure_text, start_sim

# asset -> (what it runs with: itself and what it reads first, the scopes documented for them)
ASSETS = {
    "posthog_group_types": (["posthog_group_types"], ["group:read"]),
    "posthog_groups": (["posthog_group_types", "posthog_groups"], ["group:read"]),
    "posthog_group_property_definitions": (
        ["posthog_group_types", "posthog_group_property_definitions"],
        ["group:read", "property_definition:read"]),
    "posthog_group_property_values": (
        ["posthog_group_types", "posthog_group_property_definitions",
         "posthog_group_property_values"], ["group:read", "property_definition:read"]),
    "posthog_exports": (["posthog_exports"], ["export:read"]),
    "posthog_export_contents": (["posthog_exports", "posthog_export_contents"], ["export:read"]),
    "posthog_explicit_members": (["posthog_explicit_members"], ["project:read"]),
}
# the documented scope each asset cannot do without
OWN_SCOPE = {
    "posthog_group_types": "group:read", "posthog_groups": "group:read",
    "posthog_group_property_definitions": "property_definition:read",
    "posthog_group_property_values": "group:read", "posthog_exports": "export:read",
    "posthog_export_contents": "export:read", "posthog_explicit_members": "project:read",
}


@pytest.mark.parametrize("asset", sorted(ASSETS))
def test_scopes_each_asset_lands_with_exactly_its_documented_scopes(tmp_path, asset):
    select, scopes = ASSETS[asset]
    # explicit_members exists only where PostHog still has the legacy endpoint
    legacy = {"explicit_members": "legacy"} if asset == "posthog_explicit_members" else {}
    with start_sim(tmp_path, groups_per_type=(120, 30), n_exports=6, **legacy) as env:
        key = env.sim.issue_key(scopes)
        result = env.sync(select=select, personal_api_key=key, raise_on_error=False)
        assert result.success, failure_text(result)[:1500]
        missing = [s for s in scopes if s != OWN_SCOPE[asset]]
        if asset == "posthog_group_property_values":  # group:read is needed by its upstreams too
            return
        without = env.sim.issue_key(missing or ["export:read" if "group" in asset
                                                else "group:read"])
        failed = env.sync(select=[asset], personal_api_key=without, raise_on_error=False)
        assert not failed.success
        text = failure_text(failed)
        # the 403 names the scope and what needs it (groups_types/ is read by every groups asset)
        assert OWN_SCOPE[asset] in text, text[:1500]
        assert asset in text or "every groups asset" in text, text[:1500]
