"""HTTP/1.1 keep-alive client run inside a test namespace (stdlib only).

  client.py HOST PORT COUNT [--uid U]  ->  one JSON list: the decoded answer of each request,
  all sent over one connection.
"""

from __future__ import annotations

import http.client
import json
import os
import sys

import encodings.idna  # noqa: F401  (imported before dropping privileges)


def main(argv: list[str]) -> int:
    host, port, count = argv[0], int(argv[1]), int(argv[2])
    if "--uid" in argv:
        os.setgroups([])
        os.setgid(int(argv[argv.index("--uid") + 1]))
        os.setuid(int(argv[argv.index("--uid") + 1]))
    conn = http.client.HTTPConnection(host, port, timeout=5)
    answers = []
    for _ in range(count):
        conn.request("GET", "/", headers={"Host": "svc"})
        response = conn.getresponse()
        answers.append(json.loads(response.read()))
    conn.close()
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
