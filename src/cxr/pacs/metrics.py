"""The node's counters as Prometheus metrics (``--metrics-port``): what a site's monitoring scrapes to see results
that could not be delivered, refusals and back-pressure, next to the counts every result's log line carries."""

from __future__ import annotations

HELP = {
    "associations_refused": "Associations refused: calling AE title or address not in --allow",
    "received": "C-STORE requests received",
    "predicted": "Instances predicted",
    "skipped": "Instances acknowledged but not predicted (not a frontal chest radiograph, or a cxr result)",
    "refused_too_large": "C-STORE answered 0xA700: instance over --max-instance-mb",
    "refused_busy": "C-STORE answered 0xA700: the queue was full",
    "failed_decode": "C-STORE answered 0xC000: header or pixel data could not be decoded",
    "failed_results": "Predicted instances whose SR/SC could not be built",
    "results_sent": "Instances whose results the destination stored",
    "results_failed": "Instances whose results were still not stored when the retry time ran out",
}


class NodeCollector:
    """A collector reading :meth:`cxr.pacs.node.DicomNode.status` at each scrape."""

    def __init__(self, node):
        self.node = node

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.node.status()
        for name, value in status.counts.items():
            yield CounterMetricFamily(f"cxr_dicom_{name}", HELP[name], value=value)
        yield GaugeMetricFamily("cxr_dicom_queue_depth", "Instances waiting for the model", value=status.queue_depth)
        yield GaugeMetricFamily("cxr_dicom_queue_size", "Capacity of the queue (--queue)", value=status.queue_size)


def serve_metrics(node, port: int, host: str = "127.0.0.1"):
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; return the HTTP server (``shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
