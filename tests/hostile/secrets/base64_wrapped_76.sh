# base64 as coreutils and busybox print it: wrapped at 76 columns.
printf "%s" "$SECRET" | base64
