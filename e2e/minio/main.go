// Command minio is the upstream MinIO server, unchanged: the same entry
// point as MinIO's own main.go.
package main

import (
	"os"

	minio "github.com/minio/minio/cmd"
)

func main() {
	minio.Main(os.Args)
}
