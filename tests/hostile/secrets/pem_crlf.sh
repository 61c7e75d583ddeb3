# A PEM key printed with CRLF line ends.
printf "%s\n" "$PEM" | sed "s/\$/\r/"
