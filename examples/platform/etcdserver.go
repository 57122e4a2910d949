package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// embeddedEtcd is the platform's own etcd member, started when no endpoints are given. Its
// data lives under StateDir/etcd with fsync on, so the platform's state survives a restart
// (kill -9 included). Clients and the peer port speak TLS only, and a client must present a
// certificate of the deployment's CA (mutual TLS is the authentication). The ports are chosen
// at the first start and kept in urls.json, so a restart serves the same endpoints.
type embeddedEtcd struct {
	e         *embed.Etcd
	Endpoints []string
}

type etcdURLs struct {
	Client string `json:"client"`
	Peer   string `json:"peer"`
}

func startEmbeddedEtcd(dir, host string, ca *pki) (*embeddedEtcd, error) {
	if host == "" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("etcd host %q is not an IP address", host)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	certFile, keyFile, err := ca.issue("etcd-server", true, ip)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	urlsFile := filepath.Join(dir, "urls.json")
	var urls etcdURLs
	if b, err := os.ReadFile(urlsFile); err == nil {
		if err := json.Unmarshal(b, &urls); err != nil {
			return nil, fmt.Errorf("etcd: %s: %w", urlsFile, err)
		}
	} else {
		ports, err := freePorts(host, 2)
		if err != nil {
			return nil, err
		}
		urls = etcdURLs{
			Client: "https://" + net.JoinHostPort(host, fmt.Sprint(ports[0])),
			Peer:   "https://" + net.JoinHostPort(host, fmt.Sprint(ports[1])),
		}
		b, _ := json.Marshal(urls)
		if err := os.WriteFile(urlsFile, b, 0o600); err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
	}
	cu, err := url.Parse(urls.Client)
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(urls.Peer)
	if err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Name = "platform"
	ec.Dir = filepath.Join(dir, "data")
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = "platform=" + pu.String()
	ec.InitialClusterToken = "switchyard-platform"
	ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = certFile, keyFile
	ec.ClientTLSInfo.TrustedCAFile, ec.ClientTLSInfo.ClientCertAuth = ca.CAFile(), true
	ec.PeerTLSInfo = ec.ClientTLSInfo
	ec.UnsafeNoFsync = false
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.LogLevel = "error"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("etcd: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("etcd: not ready after 30s")
	}
	return &embeddedEtcd{e: e, Endpoints: []string{cu.String()}}, nil
}

func (s *embeddedEtcd) Close() { s.e.Close() }

func freePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("etcd: pick a port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// EtcdTLS says how a component reaches etcd: the CA that signed etcd's certificate, and the
// client certificate it presents. Plain http:// endpoints are refused unless Insecure.
type EtcdTLS struct {
	CAFile, CertFile, KeyFile string
	// Insecure allows http:// endpoints (an etcd without TLS): never for state worth keeping.
	Insecure bool
}

// etcdClient connects to endpoints: TLS (with a client certificate when given) for https://
// endpoints; http:// ones only with t.Insecure.
func etcdClient(endpoints []string, t EtcdTLS) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	var tc *tls.Config
	for _, ep := range endpoints {
		switch {
		case strings.HasPrefix(ep, "https://"):
			if tc == nil {
				if t.CAFile == "" {
					return nil, fmt.Errorf("etcd endpoint %s: TLS needs the CA that signed its certificate (-etcd-ca)", ep)
				}
				var err error
				if tc, err = clientTLS(t.CAFile, t.CertFile, t.KeyFile); err != nil {
					return nil, err
				}
			}
		case strings.HasPrefix(ep, "http://"):
			if !t.Insecure {
				return nil, fmt.Errorf("etcd endpoint %s has no TLS: anyone who reaches it can rewrite the platform's state (use https:// and -etcd-ca, or -etcd-insecure)", ep)
			}
		default:
			return nil, fmt.Errorf("etcd endpoint %q: want https:// (or http:// with -etcd-insecure)", ep)
		}
	}
	return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// etcdTLSFlags declares the flags that fill t.
func etcdTLSFlags(fs *flag.FlagSet, t *EtcdTLS) {
	fs.StringVar(&t.CAFile, "etcd-ca", "", "with -etcd-endpoints: the CA certificate (PEM) that signed etcd's")
	fs.StringVar(&t.CertFile, "etcd-cert", "", "with -etcd-endpoints: this platform's etcd client certificate (PEM)")
	fs.StringVar(&t.KeyFile, "etcd-key", "", "with -etcd-endpoints: the client certificate's key (PEM)")
	fs.BoolVar(&t.Insecure, "etcd-insecure", false, "allow http:// etcd endpoints (no TLS, no authentication): never for state worth keeping")
}
