"""PyInstaller entry point of the ``minerwatch`` executables: the same CLI as the console script.

``minerwatch __memread ...`` is the memory-scan helper process (``agent/collectors/memread.py``), which
a source install runs as ``python -I -S memread.py``: a frozen build has no interpreter to do that.
"""

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "__memread":
        from agent.collectors import memread

        sys.exit(memread.main(sys.argv[2:]))
    from agent.cli.main import main

    main()
