# base64 with CRLF line ends.
printf "%s" "$SECRET" | base64 | sed "s/\$/\r/"
