package metrics_test

import (
	"strings"

	dto "github.com/prometheus/client_model/go"
)

func labels(pairs []*dto.LabelPair) string {
	var s []string
	for _, p := range pairs {
		s = append(s, p.GetName()+"="+p.GetValue())
	}
	return strings.Join(s, ",")
}
