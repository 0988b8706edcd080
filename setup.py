"""Build of the optional C extensions of ``nmsgdns``, ``dnsqr_schemas``, ``dnsqr_kafka`` and ``processors``;
all other metadata is in pyproject.toml.

The extensions are per-record hot paths, each held to a pure-Python specification by the tests:

- ``nmsgdns._wirescan``: the EDNS0 rule (DNS wire scan, IP/UDP walk, judge) and qname text; its walks are in
  ``nmsgdns/wirescan.h``, which ``processors._failure_record`` includes too;
- ``nmsgdns._nmsgbody``: NMSG container body encoding (payloads and their CRCs);
- ``dnsqr_schemas._avro`` (``schemas/_avro.c``): flat Avro records, one field read (the sink's failure
  values) or a whole record written (the filter's); ``schemas/avro.h`` holds the Avro primitives it shares
  with ``processors._failure_record``;
- ``processors._failure_record``: a selected payload's failures-topic record;
- ``dnsqr_kafka._key_partition``: Kafka's default partition of a key (murmur2; ``dnsqr_kafka/murmur2.h`` is
  the one C copy of murmur2, which ``_deltas`` includes too; ``processors/counts.h`` names the slots of a
  counts list for both of ``processors``);
- ``processors._deltas``: the filter agent's per-name-server counts and their ns-stats records;
- ``processors._state``: the aggregator's apply, changelog and snapshot records (per name server).

They are optional: where no C compiler is available (e.g. the slim Docker image) the build skips them with a
warning and the pure-Python implementations run, which give the same results (``nmsgdns.wire.IMPLEMENTATION``
and ``processors.deltas.IMPLEMENTATION`` say which). ``pip install -e .`` compiles them in place
(nmsgdns/_*.so, schemas/_*.so, dnsqr_kafka/_*.so, processors/_*.so, git-ignored); run it again after editing
a C source, or the old build keeps being imported.
"""

from setuptools import Extension, setup

EXTENSIONS = (
    "nmsgdns._wirescan",
    "nmsgdns._nmsgbody",
    "dnsqr_schemas._avro",
    "dnsqr_kafka._key_partition",
    "processors._failure_record",
    "processors._deltas",
    "processors._state",
    "processors._frozen_window",
)

#: Source directory of a package whose directory is not its name (pyproject.toml's package-dir).
PACKAGE_DIRS = {"dnsqr_schemas": "schemas"}

#: Every shared header: a change to one rebuilds every extension (they are few and small).
HEADERS = [
    "nmsgdns/varint.h",
    "nmsgdns/wirescan.h",
    "schemas/avro.h",
    "dnsqr_kafka/murmur2.h",
    "processors/counts.h",
    "processors/frozen_search.h",
]


def source(name: str) -> str:
    package, module = name.split(".")
    return f"{PACKAGE_DIRS.get(package, package)}/{module}.c"


setup(
    ext_modules=[
        Extension(
            name,
            sources=[source(name)],
            depends=HEADERS,
            optional=True,  # no compiler: skipped with a warning, and the pure-Python code runs
        )
        for name in EXTENSIONS
    ]
)
