#!/bin/sh
# Integration tests: run the bundled executable as a user would.
fail=0
[ "$(calc add 20 22)" = 42 ] && echo "ok   calc add" || { echo "FAIL calc add"; fail=1; }
[ "$(calc mul 6 7)" = 42 ] && echo "ok   calc mul" || { echo "FAIL calc mul"; fail=1; }
calc divide 1 2 2>/dev/null; [ $? = 2 ] && echo "ok   usage error" || { echo "FAIL usage error"; fail=1; }
exit $fail
