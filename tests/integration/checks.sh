# The check helpers the integration scripts share (sourced).  Each check counts itself; a
# failed one prints "FAIL: ..." on stdout and counts a failure; a script ends with
#   echo "$checks checks, $fails failed"; [ "$fails" -eq 0 ]
#
# SPDX-License-Identifier: MIT OR Apache-2.0
fails=0
checks=0
fail() {
        echo "FAIL: $*"
        fails=$((fails + 1))
}
check_eq() { # what expected got
        checks=$((checks + 1))
        [ "$2" = "$3" ] || fail "$1: expected '$2', got '$3'"
}
check_true() { # what value: the value must be True (the message says what was got)
        checks=$((checks + 1))
        [ "$2" = True ] || fail "$1"
}
check_contains() { # what file needle
        checks=$((checks + 1))
        grep -qF -- "$3" "$2" || { fail "$1: '$3' not in $2:"; sed 's/^/    /' "$2" | head -20; }
}
