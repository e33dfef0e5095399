"""The iproute2 lines the data plane's plans write, carried out in-process through netlink
(ingress/dataplane/iplines.py, via kernel.ip_batch): the same effect as `ip -force -batch`,
every line tried and the failures raised together; a form it does not know goes to `ip`."""

from __future__ import annotations

import pytest

from ingress.dataplane import DataPlaneError, kernel
from ingress.dataplane.iplines import Unsupported, parse
from tests.ingress.support import Net, needs_root_and_tools, netns_fd, sh

pytestmark = [pytest.mark.lab, needs_root_and_tools()]

TABLE = 167772162          # 10.0.0.2 as a number, as plan.py names a node's table


async def test_addresses_routes_and_rules_as_ip_batch_would(net: Net) -> None:
    ns = net.ns("ipl")
    peer = net.ns("iplp")
    net.link(ns, "eth0", "10.0.0.5/24", peer, "eth0", "10.0.0.2/24")
    with netns_fd(ns) as fd:
        await kernel.ip_batch(fd, ["address replace 10.0.0.9/32 dev eth0", "address replace 10.0.0.9/32 dev eth0",
                                   f"route replace default via 10.0.0.2 dev eth0 table {TABLE}",
                                   f"rule add pref 1000 fwmark {TABLE:#x} lookup {TABLE}"])
        assert "10.0.0.9/32" in sh("ip", "-n", ns, "-4", "address", "show", "dev", "eth0")
        assert sh("ip", "-n", ns, "route", "show", "table", str(TABLE)).startswith("default via 10.0.0.2 dev eth0")
        assert f"fwmark {TABLE:#x} lookup {TABLE}" in sh("ip", "-n", ns, "rule", "list")
        with pytest.raises(DataPlaneError) as failed:
            await kernel.ip_batch(fd, ["address del 10.0.0.9/32 dev eth0", "address del 10.0.0.9/32 dev eth0",
                                       f"rule del pref 1000 fwmark {TABLE:#x} lookup {TABLE}",
                                       f"route flush table {TABLE}"])
        assert "address del 10.0.0.9/32 dev eth0" in str(failed.value), "the second del failed, and said so"
        assert "10.0.0.9" not in sh("ip", "-n", ns, "-4", "address", "show", "dev", "eth0")
        assert sh("ip", "-n", ns, "route", "show", "table", str(TABLE)).strip() == "", "the lines after it ran"
        assert f"lookup {TABLE}" not in sh("ip", "-n", ns, "rule", "list")
        await kernel.ip_batch(fd, ["link set eth0 mtu 1400"])            # any other form: `ip` itself
        assert "mtu 1400" in sh("ip", "-n", ns, "link", "show", "dev", "eth0")


def test_only_the_forms_the_plans_write_are_taken() -> None:
    for line in ("link set eth0 up", "address add 10.0.0.9/32 dev eth0", "route replace default via x dev eth0 table 1",
                 "rule add pref 1000 fwmark zz lookup 5"):
        with pytest.raises(Unsupported):
            parse(line)
