# The value in an environment dump.
env | grep SECRET=
