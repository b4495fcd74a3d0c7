package interop

import (
	"fmt"
	"net"
	"time"

	"github.com/icetcp/tcpmux"
	proxyproto "github.com/pires/go-proxyproto"
)

// Behind a TCP load balancer that sends the PROXY protocol header, wrap the
// listener: the mux then sees, and ReadFrom reports, each real client's
// address. KeepSocketLocalAddr keeps the server's own local IP, which is
// what an ICE agent asks GetConnByUfrag for (go-proxyproto reports the
// balancer's destination instead).
func Example_proxyProtocol() {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ln := tcpmux.KeepSocketLocalAddr(&proxyproto.Listener{
		Listener:          raw,
		ReadHeaderTimeout: 5 * time.Second, // the mux's first-frame deadline covers the rest
	})
	mux := tcpmux.NewTCPMuxDefault(tcpmux.TCPMuxParams{Listener: ln})
	defer mux.Close()
	fmt.Println("listening behind the load balancer:", mux.LocalAddr().(*net.TCPAddr).IP)
	// Output:
	// listening behind the load balancer: 127.0.0.1
}
