"""Build of the optional C extensions of ``nmsgdns`` and ``processors``; all other metadata is in
pyproject.toml.

The extensions are per-record hot paths, each held to a pure-Python specification by the tests:

- ``nmsgdns._wirescan``: the EDNS0 rule (DNS wire scan, IP/UDP walk, judge), qname text, Avro writer;
- ``nmsgdns._nmsgbody``: NMSG container body encoding (payloads and their CRCs);
- ``nmsgdns._avro``: reading one field out of a flat Avro record (the sink's failure values);
- ``dnsqr_kafka._key_partition``: Kafka's default partition of a key (murmur2; ``dnsqr_kafka/murmur2.h`` is
  the one C copy of murmur2, which ``_deltas`` includes too; ``processors/counts.h`` names the slots of a
  counts list for both of ``processors``);
- ``processors._deltas``: the filter agent's per-name-server counts and their ns-stats records;
- ``processors._state``: the aggregator's apply, changelog and snapshot records (per name server).

They are optional: where no C compiler is available (e.g. the slim Docker image) the build skips them with a
warning and the pure-Python implementations run, which give the same results (``nmsgdns.wire.IMPLEMENTATION``
and ``processors.deltas.IMPLEMENTATION`` say which). ``pip install -e .`` compiles them in place
(nmsgdns/_*.so, processors/_*.so, git-ignored); run it again after editing a C source, or the old build keeps
being imported.
"""

from setuptools import Extension, setup

EXTENSIONS = (
    "nmsgdns._wirescan",
    "nmsgdns._nmsgbody",
    "nmsgdns._avro",
    "dnsqr_kafka._key_partition",
    "processors._deltas",
    "processors._state",
)

setup(
    ext_modules=[
        Extension(
            name,
            sources=[f"{name.replace('.', '/')}.c"],
            depends=["dnsqr_kafka/murmur2.h", "processors/counts.h"],
            optional=True,  # no compiler: skipped with a warning, and the pure-Python code runs
        )
        for name in EXTENSIONS
    ]
)
