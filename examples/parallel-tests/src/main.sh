case "$1" in
  add|mul) "$1" "$2" "$3" ;;
  *) echo "usage: calc add|mul A B" >&2; exit 2 ;;
esac
