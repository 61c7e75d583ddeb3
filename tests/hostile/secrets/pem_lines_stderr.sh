# A PEM key one line at a time, to stderr.
printf "%s\n" "$PEM" | while read -r line; do echo "$line" >&2; done
